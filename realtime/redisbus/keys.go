package redisbus

import (
	"strings"

	"github.com/rowcast/rowcast/realtime"
)

// roomKeys names the Redis keys of one room. The "{room}" hash tag keeps them
// in one Cluster slot; room names cannot contain braces.
type roomKeys struct {
	epoch, seq, history, published, maxTx, channel string
}

const keyPrefix = "rowcast:{"

func keysFor(r realtime.Room) roomKeys {
	base := keyPrefix + string(r) + "}"
	return roomKeys{
		epoch:     base + ":epoch",
		seq:       base + ":seq",
		history:   base + ":history",
		published: base + ":published",
		maxTx:     base + ":maxtx",
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

// slotCount is the number of Redis Cluster hash slots.
const slotCount = 16384

// slotOf is the Cluster hash slot of key: CRC16 (XMODEM) of its hash tag,
// the part between the first '{' and the next '}' when not empty, else of
// the whole key.
func slotOf(key string) int {
	if open := strings.IndexByte(key, '{'); open >= 0 {
		if n := strings.IndexByte(key[open+1:], '}'); n > 0 {
			key = key[open+1 : open+1+n]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % slotCount
}
