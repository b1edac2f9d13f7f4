"""Tweet summaries: a scheduled task writes summaries to a dict; a FastAPI service answers
`GET /tweet_summaries?subject=...` from it.

    mn up
    mn deploy examples/tweet_summaries/tweet_summaries.py      # prints the service's URL
    mn trigger tweet-summaries summarize --wait    # fill the dict now
    curl 'URL/tweet_summaries?subject=python'

The tweets come from a small deterministic generator, so the example runs without any
account or network access; replace `fetch_tweets` with a real client.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from datetime import datetime, timedelta, timezone

import uvicorn
from fastapi import FastAPI, HTTPException

import multinode as mn

SUBJECTS = ["python", "aws", "databases"]
summaries = mn.get_dict(name="tweet-summaries")


def fetch_tweets(subject: str, n: int = 50) -> list[str]:
    """Stand-in for a search API: n plausible tweets about ``subject``."""
    moods = ["love", "hate", "learning", "shipping", "debugging", "scaling"]
    out = []
    for i in range(n):
        h = int(hashlib.sha256(f"{subject}{i}".encode()).hexdigest(), 16)
        out.append(f"{moods[h % len(moods)]} {subject} today #{subject}")
    return out


def summarize_tweets(subject: str, tweets: list[str]) -> dict:
    words = Counter(w for t in tweets for w in t.split() if not w.startswith("#") and w != subject)
    return {
        "subject": subject,
        "tweets": len(tweets),
        "top_words": [w for w, _ in words.most_common(3)],
        "updated_at": datetime.now(timezone.utc).isoformat(),
    }


@mn.scheduled_task(
    reference_time=datetime(2023, 9, 8, 0, 0), interval=timedelta(hours=1), cpu=0.5, cooldown=5
)
def summarize() -> list[str]:
    for subject in SUBJECTS:
        summaries[subject] = summarize_tweets(subject, fetch_tweets(subject))
    return SUBJECTS


app = FastAPI()


@app.get("/tweet_summaries")
def latest(subject: str) -> dict:
    summary = summaries.get(subject)
    if summary is None:
        raise HTTPException(404, f"no summary for {subject!r} yet; subjects: {SUBJECTS}")
    return summary


@mn.service(port=80, cpu=1)
def api() -> None:
    # PORT is 80 on a VM of its own; on a local cloud without network namespaces it is a
    # free port, so listen where it says.
    port = int(os.environ.get("PORT", 80))
    uvicorn.run(app, host="0.0.0.0", port=port, log_level="warning")
