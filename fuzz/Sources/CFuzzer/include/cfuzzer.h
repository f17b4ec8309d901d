#include <stddef.h>
#include <stdint.h>
/// libFuzzer's driver, for a program whose main is not libFuzzer's (SwiftPM names the entry point itself).
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
