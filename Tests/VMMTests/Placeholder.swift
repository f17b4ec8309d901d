import Testing

@Test func placeholderVMMTests() { #expect(Bool(true)) }
