"""A self-hosted coding-assistant playground."""
