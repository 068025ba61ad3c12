"""State: checkpoint stores and the offsets they cover."""
