print("vmrun: not yet")
