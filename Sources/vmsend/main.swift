print("vmsend: not yet")
