import Testing

@Test func placeholderKVMTests() { #expect(Bool(true)) }
