print("vmstream: not yet")
