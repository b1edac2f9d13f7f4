# Turns the stack's outputs into an env file of the control plane's settings.
#
# Input: lines "OutputKey<TAB>OutputValue", as printed by
#   aws cloudformation describe-stacks --stack-name NAME \
#     --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output text
# Output: one line per output named Mn<Setting>, e.g. MnAwsAmiId -> MN_AWS_AMI_ID='ami-...',
# single-quoted so that the file can be sourced by a shell (set -a; . ./multinode.env) and
# read by systemd's EnvironmentFile. Other outputs (ControlPlaneUrl, ...) are skipped.
BEGIN { FS = "\t" }
$1 ~ /^Mn[A-Z]/ {
    name = $1
    gsub(/[A-Z]/, "_&", name)
    print toupper(substr(name, 2)) "='" $2 "'"
}
