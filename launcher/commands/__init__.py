"""The subcommands of `refinenet-launch`; each module has `build_parser(prog)` and `run(args) -> int`.

A module may serve a family of subcommands (`cordon`, `uncordon`, `drain`): `prog` ends with the name
the user typed."""

#: Subcommand name -> module (a launch, `refinenet-launch --cluster ...`, is `launcher.commands.launch`).
SUBCOMMANDS = {
    "submit": "launcher.commands.submit",
    "resume": "launcher.commands.resume",
    "stop": "launcher.commands.stop",
    "status": "launcher.commands.status",
    "list": "launcher.commands.list_jobs",
    "logs": "launcher.commands.logs",
    "top": "launcher.commands.top",
    "report": "launcher.commands.report",
    "health": "launcher.commands.health",
    "stacks": "launcher.commands.stacks",
    "cluster": "launcher.commands.cluster",
    "cordon": "launcher.commands.cordon",
    "uncordon": "launcher.commands.cordon",
    "drain": "launcher.commands.cordon",
}
LAUNCH = "launcher.commands.launch"
