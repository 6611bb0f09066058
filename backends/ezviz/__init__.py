"""The EZVIZ Open Platform: API client (client.py), account sync (sync.py), backend (backend.py)."""
