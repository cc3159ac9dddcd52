"""A deployed function that runs by itself every 2 seconds."""

import time

import modal

app = modal.App("kiln-test-scheduled")


@app.function(image=modal.Image.debian_slim(), schedule=modal.Period(seconds=2))
def tick():
    print(f"KILN-TICK at {time.time():.1f}")


@app.function(image=modal.Image.debian_slim(), schedule=modal.Cron("*/5 * * * *", timezone="Europe/Paris"))
def every_five_minutes():
    print("KILN-CRON")
