"""Ways for other systems to feed failured and to run its retries (Celery so far).

Nothing here is imported by the daemon's core unless configured: Celery stays optional.
"""
