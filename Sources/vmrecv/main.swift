print("vmrecv: not yet")
