"""sampledb-jobs: the analysis-job service of a malware sample database (the app is made by app.factory)."""
