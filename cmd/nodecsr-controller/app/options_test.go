package app

import (
	"strings"
	"testing"
	"time"
)

func TestValidateInventoryFlags(t *testing.T) {
	tests := map[string]struct {
		set  func(*Options)
		want string // empty: valid
	}{
		"defaults":           {set: func(*Options) {}},
		"interval too low":   {set: func(o *Options) { o.InventoryInterval = time.Millisecond }, want: "--inventory-interval must be >= 100ms, got 1ms"},
		"grace too low":      {set: func(o *Options) { o.InventoryUnregisteredGrace = 0 }, want: "--inventory-unregistered-grace must be >= 1s, got 0s"},
		"off: not checked":   {set: func(o *Options) { o.Inventory, o.InventoryInterval = false, 0 }},
		"negative drain":     {set: func(o *Options) { o.WebhookDrainDelay = -time.Second }, want: "--webhook-drain-delay must not be negative, got -1s"},
		"no drain":           {set: func(o *Options) { o.WebhookDrainDelay = 0 }},
		"both wrong at once": {set: func(o *Options) { o.InventoryInterval, o.InventoryUnregisteredGrace = 0, 0 }, want: "--inventory-interval must be >= 100ms, got 0s\n--inventory-unregistered-grace must be >= 1s, got 0s"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			o := NewOptions()
			tc.set(o)
			err := o.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Validate: %v, want %q", err, tc.want)
			}
		})
	}
	if o := NewOptions(); !o.Inventory {
		t.Error("the inventory is off by default")
	}
}
