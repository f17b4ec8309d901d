print("vmctl: not yet")
