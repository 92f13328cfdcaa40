"""Database schema tools: the migration runner for the SQL under sql/."""
