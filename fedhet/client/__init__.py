"""Device-side machinery shared by every method: context, data cache, training loops."""
