"""The remote console: an interactive Python session inside nhlink, driven over the ``console`` channel."""

from nhlink.console.files import MAX_FILE_SIZE, FileReceiver, FileTransferError
from nhlink.console.line_editor import Action, LineEditor
from nhlink.console.remote import RemoteConsole
from nhlink.console.session import PythonConsole

__all__ = [
    "MAX_FILE_SIZE",
    "Action",
    "FileReceiver",
    "FileTransferError",
    "LineEditor",
    "PythonConsole",
    "RemoteConsole",
]
