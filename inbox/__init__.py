"""The inbox part: what each user keeps about their conversations (stars, archive, labels), names and blocks."""
