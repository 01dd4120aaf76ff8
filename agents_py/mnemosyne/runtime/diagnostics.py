"""The diagnostic methods every worker serves, whatever its role (protocol README).

They let the supervisor's tests and health checks exercise the runtime itself: a round trip
(`echo`), a long cancellable request that keeps reporting progress (`sleep`), and proof that
stray output from Python, the C level and child processes stays off the wire (`stdout_noise`).
"""

import asyncio
import math
import os
import subprocess
from typing import Any

from mnemosyne.runtime.worker import Handler, RequestContext, RequestError

PROGRESS_INTERVAL_S = 1.0


async def echo(params: Any, ctx: RequestContext) -> Any:
    return params


async def sleep(params: Any, ctx: RequestContext) -> dict[str, Any]:
    seconds = params.get("seconds") if isinstance(params, dict) else None
    valid = isinstance(seconds, int | float) and not isinstance(seconds, bool)
    if not valid or not math.isfinite(seconds) or seconds < 0:
        raise RequestError("invalid_params", 'sleep needs {"seconds": a non-negative number}')
    loop = asyncio.get_running_loop()
    start = loop.time()
    end = start + seconds
    # Sleeping in steps towards fixed ticks, rather than `await asyncio.sleep(seconds)`, is
    # what lets the progress notifications go out; cancellation lands in whichever step runs.
    tick = start + PROGRESS_INTERVAL_S
    while tick < end:
        await asyncio.sleep(tick - loop.time())
        elapsed = loop.time() - start
        await ctx.progress(
            message=f"slept {elapsed:.0f} of {seconds:g} s", fraction=min(1.0, elapsed / seconds)
        )
        tick += PROGRESS_INTERVAL_S
    await asyncio.sleep(max(0.0, end - loop.time()))
    return {"slept": seconds}


async def stdout_noise(params: Any, ctx: RequestContext) -> dict[str, bool]:
    print("stdout_noise: print() from the worker")
    os.write(1, b"raw fd1 write\n")
    os.system("echo hi")
    subprocess.run(["echo", "from child"], stdin=subprocess.DEVNULL, check=False)
    return {"ok": True}


METHODS: dict[str, Handler] = {
    "echo": echo,
    "sleep": sleep,
    "stdout_noise": stdout_noise,
}
