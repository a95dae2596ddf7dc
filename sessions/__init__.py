"""Session stores, ids and cookies (filled by the sessions issue; the request path already has the hook)."""
