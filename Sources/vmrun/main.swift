import ToolSupport

ToolMain.run(VMRun.self)
