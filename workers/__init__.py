"""Celery door: the app, its queues and thin tasks that call into services/."""
