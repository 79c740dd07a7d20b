"""Posting: journal entries from canonical events (issue 15)."""
