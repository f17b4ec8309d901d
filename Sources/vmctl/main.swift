import ArgumentParser
import ToolSupport

// Exit status: 0 success, 1 failure (one line on stderr), 2 invalid usage.
/// `vmctl --run-dir DIR status NAME`: ArgumentParser takes a subcommand's options only after its
/// name, so a leading --run-dir is moved behind the subcommand.
var arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "--run-dir", arguments.count >= 3 {
    let lifted = arguments[0...1]
    arguments.removeFirst(2)
    arguments.insert(contentsOf: lifted, at: 1)
} else if arguments.first?.hasPrefix("--run-dir=") == true, arguments.count >= 2 {
    arguments.insert(arguments.removeFirst(), at: 1)
}
ToolMain.run(VMCtl.self, arguments: arguments)
