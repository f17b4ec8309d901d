// The declaration in include/cfuzzer.h is all this target provides.
