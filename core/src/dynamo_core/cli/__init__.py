"""The `dynamo` command."""
