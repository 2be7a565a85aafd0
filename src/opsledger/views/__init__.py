"""Renderers: result objects as text, markdown, JSON or HTML (the CLI chooses the view)."""
