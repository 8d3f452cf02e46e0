#!/usr/bin/env bash
# Posts a file as this workflow's comment on a pull request, or updates the comment of the
# same kind this workflow posted before: the one by github-actions[bot] whose body starts with
# the file's first line (its "### …" heading). Needs GH_TOKEN, GITHUB_REPOSITORY and PR.
# Usage: pr-comment.sh <file>
set -euo pipefail
body_file="$1"
heading=$(head -n 1 "$body_file" | sed 's/:.*//')
comment=$(gh api "repos/$GITHUB_REPOSITORY/issues/$PR/comments" --paginate \
  --jq ".[] | select(.user.login == \"github-actions[bot]\")
             | select(.body | startswith(\"$heading\")) | .id" | tail -n 1)
if [ -n "$comment" ]; then
  gh api -X PATCH "repos/$GITHUB_REPOSITORY/issues/comments/$comment" -F "body=@$body_file"
else
  gh pr comment "$PR" --body-file "$body_file"
fi
