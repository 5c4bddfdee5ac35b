"""The Amazon SNS API on Moorage's core: topics are fanout exchanges (see docs/sns.md)."""
