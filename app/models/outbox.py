from __future__ import annotations

import uuid

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy.dialects.postgresql import JSONB

from app.models.base import Base


class OutboxMessage(Base):
    """A Kafka message written in the transaction of the change it announces; the relay sends it."""

    __tablename__ = "outbox"

    id: so.Mapped[int] = so.mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    event_id: so.Mapped[uuid.UUID] = so.mapped_column(sa.Uuid, default=uuid.uuid4, unique=True)
    topic: so.Mapped[str] = so.mapped_column(sa.String(255))
    key: so.Mapped[str] = so.mapped_column(sa.String(255))
    value: so.Mapped[dict] = so.mapped_column(JSONB)
    created_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    sent_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    # Every failed send, outages included: it decides the back-off.
    attempts: so.Mapped[int] = so.mapped_column(sa.Integer, default=0)
    # Failures that were the row's own (others got through, and the broker did not call the error
    # retriable): only these park a row, so an outage parks nothing however long it lasts.
    refusals: so.Mapped[int] = so.mapped_column(sa.Integer, default=0, server_default="0")
    next_attempt_timestamp: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=0)
    last_error: so.Mapped[str | None] = so.mapped_column(sa.Text)
    # Set when the broker can never take the row (or it failed too often): it and its key wait for an operator.
    parked_timestamp: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)

    __table_args__ = (
        # The relay reads only unsent rows, oldest first; sent rows leave the index.
        sa.Index("ix_outbox_unsent", "id", postgresql_where=sa.text("sent_timestamp IS NULL")),
        # Retention deletes sent rows oldest first; unsent rows are not in this index, so never purged.
        sa.Index("ix_outbox_sent", "sent_timestamp", postgresql_where=sa.text("sent_timestamp IS NOT NULL")),
        # "Is an earlier row of this key still unsent?", asked for every row the relay claims.
        sa.Index("ix_outbox_unsent_key", "key", "id", postgresql_where=sa.text("sent_timestamp IS NULL")),
        sa.Index(
            "ix_outbox_parked",
            "id",
            postgresql_where=sa.text("parked_timestamp IS NOT NULL AND sent_timestamp IS NULL"),
        ),
    )
