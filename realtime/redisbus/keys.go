package redisbus

import (
	"strings"

	"github.com/rowcast/rowcast/realtime"
)

// roomKeys names the Redis keys of one room. The "{room}" hash tag keeps them
// in one Cluster slot; room names cannot contain braces.
type roomKeys struct {
	epoch, seq, history, published, channel string
}

const keyPrefix = "rowcast:{"

func keysFor(r realtime.Room) roomKeys {
	base := keyPrefix + string(r) + "}"
	return roomKeys{
		epoch:     base + ":epoch",
		seq:       base + ":seq",
		history:   base + ":history",
		published: base + ":published",
		channel:   base + ":live",
	}
}

// roomOfChannel is the inverse of keysFor(r).channel.
func roomOfChannel(ch string) (realtime.Room, bool) {
	rest, ok := strings.CutPrefix(ch, keyPrefix)
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, "}:live")
	if !ok {
		return "", false
	}
	r, err := realtime.ParseRoom(name)
	return r, err == nil
}
