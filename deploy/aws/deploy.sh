#!/usr/bin/env bash
# Create, delete or inspect the mterelay CloudFormation stacks (docs/deploy.md).
#
#   deploy/aws/deploy.sh create|delete|status [demo|production]
#
# The template is deploy/aws/<stack>.yaml, its parameters deploy/aws/parameters-<stack>.json
# (CloudFormation's [{"ParameterKey": ..., "ParameterValue": ...}] form). Environment:
#   STACK_NAME   stack name (default mterelay-<stack>)
#   PARAMETERS   another parameters file
#   AWS_REGION / AWS_PROFILE as for any AWS CLI command.
set -euo pipefail

# Bash builtins only here, so a missing aws is reported as such whatever PATH holds.
script="${BASH_SOURCE[0]}"
case "$script" in */*) here="${script%/*}" ;; *) here=. ;; esac
here="$(cd "$here" && pwd)"
prog="${script##*/}"

usage() {
  echo "usage: $prog create|delete|status [demo|production]" >&2
  [ $# -eq 0 ] || echo "$prog: $*" >&2
  exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage "expected an action and at most one stack"
action="$1"
stack="${2:-demo}"
case "$action" in create | delete | status) ;; *) usage "unknown action '$action'" ;; esac
case "$stack" in demo | production) ;; *) usage "unknown stack '$stack' (demo or production)" ;; esac

template="$here/$stack.yaml"
parameters="${PARAMETERS:-$here/parameters-$stack.json}"
stack_name="${STACK_NAME:-mterelay-$stack}"

command -v aws >/dev/null 2>&1 || { echo "$prog: the AWS CLI (aws) is not on PATH" >&2; exit 1; }

# "Key=Value" lines from the parameters file, for `aws cloudformation deploy`.
parameter_overrides() {
  [ -r "$parameters" ] || { echo "$prog: cannot read parameters file $parameters" >&2; return 1; }
  python3 - "$parameters" <<'PY'
import json
import sys

path = sys.argv[1]
try:
    with open(path, encoding="utf-8") as handle:
        entries = json.load(handle)
    if not isinstance(entries, list):
        raise ValueError("must be a JSON list")
    for entry in entries:
        key, value = entry["ParameterKey"], entry["ParameterValue"]
        if not isinstance(key, str) or not isinstance(value, str) or "\n" in value:
            raise ValueError(f"entry {key!r} must have a string ParameterValue on one line")
        print(f"{key}={value}")
except (OSError, ValueError, KeyError, TypeError) as error:
    sys.exit(f"deploy.sh: {path}: not a CloudFormation parameters file ({error})")
PY
}

output() {
  aws cloudformation describe-stacks --stack-name "$stack_name" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text
}

status() {
  aws cloudformation describe-stacks --stack-name "$stack_name" \
    --query 'Stacks[0].[StackName,StackStatus]' --output text
  aws cloudformation describe-stacks --stack-name "$stack_name" \
    --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output text
  if [ "$stack" = demo ]; then
    # The demo task has a public IP and no load balancer: find the running task's address.
    local cluster service tasks eni
    cluster="$(output Cluster)"
    service="$(output Service)"
    tasks="$(aws ecs list-tasks --cluster "$cluster" --service-name "$service" \
      --desired-status RUNNING --query 'taskArns[0]' --output text)"
    if [ -z "$tasks" ] || [ "$tasks" = None ]; then
      echo "RelayUrl	(no running task yet)"
      return 0
    fi
    eni="$(aws ecs describe-tasks --cluster "$cluster" --tasks "$tasks" \
      --query "tasks[0].attachments[0].details[?name=='networkInterfaceId'].value | [0]" \
      --output text)"
    echo "RelayUrl	http://$(aws ec2 describe-network-interfaces --network-interface-ids "$eni" \
      --query 'NetworkInterfaces[0].Association.PublicIp' --output text):8080"
  fi
}

case "$action" in
  create)
    [ -r "$template" ] || { echo "$prog: missing template $template" >&2; exit 1; }
    overrides="$(parameter_overrides)"
    deploy_args=(--stack-name "$stack_name" --template-file "$template"
      --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset)
    if [ -n "$overrides" ]; then
      mapfile -t overrides_list <<<"$overrides"
      deploy_args+=(--parameter-overrides "${overrides_list[@]}")
    fi
    aws cloudformation deploy "${deploy_args[@]}"
    status
    ;;
  delete)
    aws cloudformation delete-stack --stack-name "$stack_name"
    aws cloudformation wait stack-delete-complete --stack-name "$stack_name"
    echo "deleted $stack_name"
    ;;
  status)
    status
    ;;
esac
