"""Readers and writers for driving datasets on disk (Bench2Drive clips)."""
