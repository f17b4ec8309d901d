#if canImport(Glibc)
import Glibc
#endif
import ToolSupport

signal(SIGPIPE, SIG_IGN)
ToolMain.run(VMStreamCommand.self)
