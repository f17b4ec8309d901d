import ToolSupport

#if canImport(Glibc)
    import Glibc
#endif

signal(SIGPIPE, SIG_IGN)
ToolMain.run(VMStreamCommand.self)
