"""A fal App with app_files: a local module and a data file, shipped to its runners."""

import fal
import fal_files_helper


class Files(fal.App, keep_alive=60):
    requirements = ["six==1.16.0"]  # noqa: RUF012 (as fal users write it)
    app_files = ["fal_files_helper.py", "data/fal_greeting.txt"]  # noqa: RUF012
    app_name = "files"

    def setup(self):
        with open("data/fal_greeting.txt") as f:
            self.greeting = f.read().strip()

    @fal.endpoint("/")
    def greet(self) -> dict:
        return {"greeting": self.greeting, "helper": fal_files_helper.shout("kiln")}
