"""Tasks (NSURLSessionTask): the lifecycle, data / upload / download tasks, resume data."""

from ..errors import IllegalTransition
from .base import TRANSITIONS, Task, TaskState
from .data import DataTask
from .download import DownloadTask, Journal, ResumeData
from .partial import PartialFile
from .upload import UploadTask

__all__ = [
    "TRANSITIONS",
    "DataTask",
    "DownloadTask",
    "IllegalTransition",
    "Journal",
    "PartialFile",
    "ResumeData",
    "Task",
    "TaskState",
    "UploadTask",
]
