"""Standalone: every device trains its own architecture alone, no communication (pFedAFM baseline)."""
