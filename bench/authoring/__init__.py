"""Authoring prompt sets and label translations: scaffold, lint, measure (`bench prompts|labels ...`)."""
