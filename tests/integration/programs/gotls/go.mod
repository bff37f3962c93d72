module ecapturetest/gotls

go 1.19
