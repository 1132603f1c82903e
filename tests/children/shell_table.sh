#!/bin/sh
# A table in POSIX sh speaking the smtpd 7.6 protocol (0.1), for the table-procexec tests.
# $1: a file of "key value" lines (or bare keys: a list). check: the key is there; lookup:
# its value; fetch: nothing. Only EOF ends it.
data=$1

find_key() { # $1: key; sets $value, fails if absent
	while read -r k v; do
		[ "$k" = "$1" ] && { value=$v; return 0; }
	done < "$data"
	return 1
}

while IFS= read -r line; do
	case $line in
	'config|tablename|'*) echo "shell table ${line#config|tablename|}: pid $$, data $data" >&2 ;;
	'config|ready') printf 'register|%s\n' alias domain userinfo credentials ready ;;
	'config|'*) ;;
	'table|'*)
		rest=${line#table|*|*|*|}  # drop table|0.1|<timestamp>|<name>|
		op=${rest%%|*} rest=${rest#*|}
		case $op in
		update) printf 'update-result|%s|ok\n' "$rest" ;;
		fetch) printf 'fetch-result|%s|not-found\n' "${rest#*|}" ;;
		check | lookup)
			rest=${rest#*|} # drop the service
			id=${rest%%|*} key=${rest#*|}
			if [ ! -r "$data" ]; then
				printf '%s-result|%s|error|cannot read %s\n' "$op" "$id" "$data"
			elif ! find_key "$key"; then
				printf '%s-result|%s|not-found\n' "$op" "$id"
			elif [ "$op" = check ]; then
				printf 'check-result|%s|found\n' "$id"
			elif [ -n "$value" ]; then
				printf 'lookup-result|%s|found|%s\n' "$id" "$value"
			else
				printf 'lookup-result|%s|not-found\n' "$id"
			fi ;;
		esac ;;
	esac
done
