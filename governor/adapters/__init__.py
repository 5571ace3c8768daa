"""Adapters that put frameworks' model calls under a governor.

``governor.adapters.litellm`` and ``governor.adapters.langgraph`` import their
framework when first imported, not when ``governor`` is.
"""
