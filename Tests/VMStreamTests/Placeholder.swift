import Testing

@Test func placeholderVMStreamTests() { #expect(Bool(true)) }
