"""Moderation: reports, the review queue projected from events, audited decisions."""
