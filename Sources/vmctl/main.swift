import ArgumentParser
import Glibc
import VMControl

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
let command: any ParsableCommand
do {
    command = try VMCtl.parseAsRoot(arguments)
} catch {
    let code = VMCtl.exitCode(for: error)
    if code == .success {
        print(VMCtl.fullMessage(for: error))
        exit(0)
    }
    printError(VMCtl.fullMessage(for: error))
    exit(2)
}
guard let runnable = command as? any VMCtlCommand else {
    printError(VMCtl.helpMessage())
    exit(2)
}
do {
    try runnable.execute()
    exit(0)
} catch {
    printError("vmctl: \(error)")
    exit(1)
}
