//! Celery's wire formats (placeholder; being written).
