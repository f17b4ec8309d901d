import ArgumentParser
import Glibc
import VMControl

// Exit status: 0 success, 1 failure (one line on stderr), 2 invalid usage.
let command: VMRun
do {
    command = try VMRun.parse()
} catch {
    let code = VMRun.exitCode(for: error)
    if code == .success {
        print(VMRun.fullMessage(for: error))
        exit(0)
    }
    printError(VMRun.fullMessage(for: error))
    exit(2)
}
do {
    exit(try command.execute())
} catch {
    printError("vmrun: \(error)")
    exit(1)
}
