"""Notifiers (``BaseNotifier``) for Slack, Jira and ServiceNow; usable in any callback list and by the budget engine."""
