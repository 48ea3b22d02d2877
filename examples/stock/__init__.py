"""The stock service: a second, tiny service the shop calls, so traces cross processes."""
